import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests import their shared helpers (parity.py) by name

# ScanCode (the corpus tests) imports the standard library's distutils; setuptools' distutils shim then fails an
# assertion when torch.compile's inductor imports setuptools later in the same process. Keep the stdlib one.
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
