"""The prune command: its spec, the streamed pipeline (statistics pass, prune, encode, write) and the API."""
