"""DPA (Dynamic Partition Amplification): partitions, combine rules, factor search, objectives.

The entry points live in ``api`` (``amplify``, ``prune_and_amplify``) and are exported by ``dppa_peft``; this package
init stays light because the pruning pipeline imports ``partitions`` and ``factors``.
"""
