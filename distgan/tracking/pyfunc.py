"""The MLflow pyfunc of a distgan generator, logged as "models from code".

MLflow stores this file with the model and runs it at load time, so
`mlflow.pyfunc.load_model(uri).predict(latents)` needs only mlflow and torch, not distgan. The
generator itself is a `torch.export` program with a dynamic batch dimension: no pickled code.
"""

import warnings

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

# The signature logged with the model validates inputs; MLflow's nag about type hints is noise.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class GeneratorModel(PythonModel):
    def load_context(self, context):
        self.generator = torch.export.load(context.artifacts["program"]).module()

    def predict(self, context, model_input, params=None):
        """latents [N, latent_dim] -> samples [N, ...] as float32 numpy."""
        z = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.generator(z).numpy()


mlflow.models.set_model(GeneratorModel())
