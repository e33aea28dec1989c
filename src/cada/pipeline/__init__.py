"""The pipeline in reading order: stages (what a stage is), pools, align (one arm), study (the paper's study)."""
