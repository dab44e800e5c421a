"""The lowest layer: errors, output folders, progress, devices and dtypes, validators, fixed choices, the spec base
and the generic registry. Imports nothing else of the package."""
