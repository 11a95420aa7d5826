"""facegate export stage: conversion, quantisation, calibration, training. Runs on a workstation."""
