"""Run by MLflow when it loads a registered encoder ("models from code"); never imported here."""

import mlflow.models

from imagefinder.encoders.pyfunc import EncoderModel

mlflow.models.set_model(EncoderModel())
