"""The artifact contract every stage agrees on: ONNX metadata, build manifest, file naming, the precision rule.

Imports only ``sedeploy.files``, ``sedeploy.errors`` and ``sedeploy._version`` (the import-rule test keeps it so).
"""
