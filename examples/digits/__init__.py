"""Real-data example: two dynamic CNNs trained on scikit-learn's handwritten digits.

``data`` loads the split, ``models`` holds the networks (``MultiExitCNN``, ``GatedCNN``),
``train`` trains, fine-tunes and caches them, and ``optimize`` (the script) compiles every
variant (fp32, pruned, int8, pruned + int8) with dycomp and prints a comparison table.
"""
