"""prompt_tuning: parameter-efficient tuning (prompts, prefixes) of frozen T5 in JAX/Flax."""

import setuptools

# Pinned: these versions are known to install and work together (see README).
# Move them forward deliberately, with the whole test suite, never by accident.
INSTALL_REQUIRES = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "chex==0.1.92",
  "gin-config==0.5.0",
  "sentencepiece==0.2.3",
  "numpy==2.4.6",
  "seqio==0.0.20",
  "tensorflow==2.21.0",
  "tensorflow-text==2.21.1",
  "tensorflow-datasets==4.9.10",
  # tfds and etils import it while preparing a dataset (download_and_prepare) but do not declare it; without it
  # GLUE/SuperGLUE cannot be prepared (tests/test_data_prepare.py).
  "importlib_resources==7.1.0",
  "clu==0.0.12",
  "tensorboard==2.21.0",
  "tensorstore==0.1.86",
  # MODEL_DIR on gs:// (prompt_tuning/storage.py): etils' epath reaches Cloud Storage through fsspec and gcsfs
  # (tf.io.gfile cannot be pointed at an emulator or another endpoint); fsspec pinned at what gcsfs needs.
  "gcsfs==2026.10.1",
  "fsspec==2026.9.0",
  "msgpack==1.2.4",
  "safetensors==0.8.0",
  "scipy==1.17.1",
  "scikit-learn==1.9.1",
  "tqdm==4.70.1",
  "huggingface-hub==2.4.0",  # Hub ids as checkpoint paths (prompt_tuning.checkpoints.hub).
  # The generation tasks' metrics (prompt_tuning.data.metrics): ROUGE as T5 computes it, and BLEU.
  "rouge-score==0.1.2",
  "sacrebleu==2.6.0",
]

EXTRAS_REQUIRE = {
  # The Hugging Face side of the parity and interop tests. torch==2.13.0 must
  # be installed first, on its own (the Makefile does): installed together,
  # pip resolves torch to a CUDA build and pulls gigabytes of packages.
  "interop": ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2"],
  # gcp-storage-emulator: the GCS server the gs:// tests start on 127.0.0.1; papermill runs the Colab notebook.
  "test": [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "ruff==0.17.6",
    "gcp-storage-emulator==2026.7.19",
    "papermill==2.7.0",
  ],
  "notebooks": ["nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0", "matplotlib==3.11.2"],
  # `prompt-tuning sweep`: the Ray executor and the report's figures.
  "sweeps": ["ray==2.60.0", "matplotlib==3.11.2"],
  # `prompt-tuning serve` (prompt_tuning/serve) and its tests (httpx is also the tests' client).
  # aiohttp: benchmarks/serve.py's load generator (a quarter of httpx's CPU per request; gcsfs needs it anyway).
  "serve": ["fastapi==0.165.0", "uvicorn==0.54.0", "httpx==0.28.1", "prometheus-client==0.26.0", "aiohttp==3.14.5"],
}

GIN_PACKAGES = {"prompt_tuning.gin_files.gin": "gin", "prompt_tuning.gin_files.configs": "configs"}

setuptools.setup(
  name="prompt_tuning",
  version="0.1.0",
  description="Prompt tuning and prefix tuning of frozen T5 models in JAX/Flax.",
  python_requires=">=3.11",
  # The gin library (gin/) and ready-to-run configs (configs/) live at the top of
  # the repository; a non-editable install carries them inside the package, where
  # `prompt_tuning.gin_config.gin_search_paths` finds them.
  packages=setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"]) + list(GIN_PACKAGES),
  package_dir=GIN_PACKAGES,
  package_data={
    **{name: ["**/*.gin"] for name in GIN_PACKAGES},
    # The demo model, its vocabulary and card, and the WordNet tasks (prompt_tuning.demo_data); every folder under
    # assets/ (tests/test_packaging.py checks the wheel carries each file).
    "prompt_tuning": ["assets/*/*"],
  },
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
  entry_points={
    "console_scripts": [
      "prompt-tuning=prompt_tuning.cli:main",
      "t5x=prompt_tuning.cli:main",
    ]
  },
)
