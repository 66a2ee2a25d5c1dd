"""Model code: encoders and their pre-processing. Plain Python + torch; nothing here knows HTTP or BentoML.

`tokenizer`, `preprocess` and `vectors` import no torch, so that the API process can validate and pre-process
inputs without paying for it; `text` and `image` hold the encoders.
"""
