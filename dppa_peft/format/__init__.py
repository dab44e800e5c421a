"""The adapter on disk: compact encoding, config, fingerprint, folder I/O."""
