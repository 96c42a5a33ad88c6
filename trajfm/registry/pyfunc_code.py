"""The pyfunc model's code, logged as MLflow "models from code": MLflow copies this file into the
model and runs it at load time, so no pickled Python object is stored or unpickled (the weights
are the ``checkpoint`` artifact, read with ``weights_only=True``)."""

import mlflow

from trajfm.registry.pyfunc import TrajFMPyfunc

mlflow.models.set_model(TrajFMPyfunc())
