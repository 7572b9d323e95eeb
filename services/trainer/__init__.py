"""Trainer worker: timm classifiers, baselines, metrics with intervals, AAS rounds."""
