"""thinklens: open up reasoning language models with sparse autoencoders.

Importing the package prints nothing and patches nothing; each stage lives in its sub-package
(`thinklens.models`, `thinklens.data`, ...).
"""

__version__ = "0.1.0"
