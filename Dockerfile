# stylecam on an NVIDIA GPU:
#   docker build -t stylecam .
#   docker run --gpus all -p 8080:8080 -v hf-cache:/root/.cache/huggingface stylecam
# The model downloads on first start into the mounted cache. Browsers need HTTPS for the
# camera on other machines: mount a certificate and add --cert/--key (see README.md).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

EXPOSE 8080
ENTRYPOINT ["python", "server.py", "--host", "0.0.0.0"]
