"""`facegate bench …`: accuracy and speed measured on the device's own code path; JSON out."""
