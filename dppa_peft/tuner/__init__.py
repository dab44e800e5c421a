"""The PEFT side: the tuner layer and model (``layer``, ``model``), PEFT's ``add_weighted_adapter`` (``weighted``),
``PeftModel.push_to_hub`` (``push``) and the registration of SPARSE_DELTA with PEFT (``registration``).

Light on purpose: ``import dppa_peft`` imports ``registration``, which imports peft only when registering."""
