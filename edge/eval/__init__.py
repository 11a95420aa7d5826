"""The evaluation protocol as a library: LFW pairs files and identities, embedding image sets, accuracy, TAR at
FAR, open-set identification (DIR at FPIR), and the calibrations. `facegate bench …` and the export stage
call it; nothing here imports a command module.
"""
