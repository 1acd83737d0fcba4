import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # litgpt_clone_datatrove without installing it
sys.path.insert(0, str(HERE.parents[2] / "tests"))  # the corpus fixture shared with tests/test_corpus_pipeline.py
