"""``python -m bench.pipeline``: the media pipeline's CPU cost against bare ffmpeg."""
