"""The model layer: loading, the tiny offline model, the LCM stream loop. Knows nothing of WebRTC."""

import transformers

# Importing diffusers' pipelines makes transformers advise installing torchvision, which
# stylecam does not use; its other warnings are for notebooks, not a server's log.
transformers.utils.logging.set_verbosity_error()
