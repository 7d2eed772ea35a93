"""What pipelines and the server read from outside the process: Hugging Face downloads (`hub`),
uploaded reference images (`assets`), the local-path policy (`paths`), the machine's
hardware (`hardware`), and LoRA files (`loras`, `lora_install`). Imports nothing else of
`pipeline`."""
