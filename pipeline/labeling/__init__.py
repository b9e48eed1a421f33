"""The Label Studio round trip: ``mmcurate label export`` (samples worth a person's time, with the pipeline's scores
as pre-annotations), ``mmcurate label import`` (annotations into ``DIR/labels/``, read incrementally), the ``labels``
stage that applies them on the next run (``mmcurate.stages.labels``), and ``mmcurate label report`` (the automatic
filter against the people). README: Labeling."""
