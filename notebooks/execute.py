"""Execute notebooks in place and keep their outputs, so that a reader on the web sees results.

    make notebooks    # all three: 01 on CamVid (../shared/camvid, or CAMVID=/path), 02 with the released
                      # weights on its val split, 03 on the committed study (results/cpu_study)

The notebooks read their data from the environment (BISENET_DATA_ROOT, ...), as they say at the top.
"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

for name in sys.argv[1:]:
    path = Path(name)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(notebook, path)
    print(f"executed {path}")
