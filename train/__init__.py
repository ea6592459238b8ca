"""`python -m train`: fine-tune the Moshi LM in Flax after kyutai's recipe (models_flax/training/), from a JSON run
config (config.py) and data in a documented on-disk format (data.py), with resumable Orbax checkpoints
(models_flax/training/checkpoint.py, rundir.py) and the final model written as a flax checkpoint and/or kyutai-layout
LoRA adapters (export.py). cli.py is the command; model.py builds what it trains."""
