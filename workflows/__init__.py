"""Workflow files shipped with mmcurate (the demo and training examples); installed as package data."""
