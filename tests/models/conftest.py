from tests.support.tiny_vlm import tiny_llava  # noqa: F401  (session fixture)
