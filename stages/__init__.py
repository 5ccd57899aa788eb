"""One module per stage; each exposes ``STAGE``, a :class:`pipeline.stage.StageSpec`."""
