"""DPA (Dynamic Partition Amplification): partitions, combine rules, factor search, objectives.

The entry point lives in ``api`` (``amplify``; ``prune_and_amplify`` is ``prune.api``'s) and is exported by
``dppa_peft``; the settings are in ``spec``. This package init stays light: ``import dppa_peft`` imports it.
"""
