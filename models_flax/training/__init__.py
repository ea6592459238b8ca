"""Fine-tuning the LM in Flax, after kyutai's recipe (moshi_spec/training.py says what each setting means):
`lora` (adapters on every linear), `optimizer` (AdamW, torch's clipping, OneCycleLR with beta1 cycling), `step`
(the loss, micro-batch accumulation, mixed precision, a jitted step on a ('dp', 'fsdp') mesh) and `checkpoint` (Orbax
train state that resumes bit for bit)."""
