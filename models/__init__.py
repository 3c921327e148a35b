# The modules whose source decides what a loaded model computes: every stage that loads one lists
# them in its code version, so a change to loading recomputes each of those stages alike.
MODEL_CODE = ("models.families", "models.loading", "models.precision", "models.vlm")
