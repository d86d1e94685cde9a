"""The trust benchmark: leanset's duplicate, leak and label-issue decisions on real packaged images
with planted copies, scored against the truth and set beside cleanlab Datalab (see README.md)."""
