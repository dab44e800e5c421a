"""The adapter on disk: compact encoding, config, fingerprint, folder I/O, and the kernel that applies a delta."""
