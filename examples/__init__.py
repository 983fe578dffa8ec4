"""The bundled DWM sample (00055), shipped as package data so that an installed copy runs the demo."""
