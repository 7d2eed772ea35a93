"""What pipelines and the server read from outside the process: Hugging Face downloads (`hub`),
uploaded reference images (`assets`), the local-path policy (`paths`) and the machine's
hardware (`hardware`). Imports nothing else of `pipeline`."""
