"""The server people write from the tutorials (the baseline of serve_load.py): FastAPI, PIL and
torchvision transforms, one eager PyTorch forward per request, on the event loop.

Usage: python benchmarks/serve_baseline.py PORT
"""

import io
import sys

import torch
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image
from torchvision import transforms

from graft.backbones import create_backbone

backbone = create_backbone("tf_efficientnet_lite0").eval()  # same network and weights as graft's
head = torch.nn.Linear(backbone.num_features, 2).eval()     # a head of the same size
config = backbone.preprocess
size = config.input_size[1]
transform = transforms.Compose([
    transforms.Resize(int(size / config.crop_pct)), transforms.CenterCrop(size),
    transforms.ToTensor(), transforms.Normalize(config.mean, config.std)])
labels = ["ants", "bees"]
app = FastAPI()


@app.post("/predict")
async def predict(request: Request):
    image = Image.open(io.BytesIO(await request.body())).convert("RGB")
    with torch.no_grad():
        probabilities = torch.softmax(head(backbone(transform(image)[None])), 1)[0]
    top = torch.topk(probabilities, 2)
    return {"predictions": [{"label": labels[i], "score": float(s)}
                            for s, i in zip(top.values, top.indices)]}


@app.get("/ready")
async def ready():
    return {"ready": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info", access_log=False)
