"""The fixed answer of document-QA data when the context does not hold one.

One home for the phrase, because three places must agree on it byte for byte: the SFT docqa
templates train it, the SFT metrics score it, and the synth teacher prompts ask for it.
"""

REFUSAL_KO = "답변을 찾을 수 없습니다."
REFUSAL_EN = "The answer cannot be found."
