"""An MLServer custom runtime: doubles its input tensor (numpy from the packed environment)."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Double(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        out = NumpyCodec.encode_output(name="output", payload=np.asarray(x) * 2)
        return InferenceResponse(model_name=self.name, outputs=[out])
