"""The serving runtime that feeds the models: the service (`service`), one worker thread per
device (`worker`) running an engine (`engine`: in this process; `ray_backend`: in a Ray actor),
each session's stream (`stream`) with its window of latest frames (`frames`), stats and events.

It looks pipelines up in `pipeline.registry` and never imports a concrete model."""
