"""The privacy stages: ``pii`` (personal data out of every text field, faces blurred; ``stage.py``) and
``blocklist`` (media on sha256 / perceptual-hash lists dropped; ``blocklist.py``)."""
