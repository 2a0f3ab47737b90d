"""One frozen base model carrying two LoRA adapters and a value head.

- adapter "policy": the trained policy (its logits give the actions);
- adapter "value" + `value_head` (nn.Linear(hidden, 1) on the last hidden state): the critic;
- adapters disabled: the reference policy. No second copy of the weights exists.

peft trap (verified on a tiny Llama with two adapters): `set_adapter(name)` sets requires_grad=False on every other adapter, so
after a policy forward and a value forward a single backward would leave the policy LoRA without gradient.
Re-enabling requires_grad after each switch fixes that on one process but not under DDP: flipping a
leaf's requires_grad off and on replaces its gradient accumulator, which (observed with 2 gloo processes)
drops DDP's all-reduce hook, and the processes silently drift apart. So `use_adapter` only switches which
adapter the LoRA layers run (their `_active_adapter`, what peft's own set_adapter assigns) and never
touches requires_grad; both adapters stay trainable for the whole run. Tests check that both adapters get
gradients and that two processes end with identical weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from training.ppo.config import PPOConfig

POLICY, VALUE = "policy", "value"
ADAPTERS = (POLICY, VALUE)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, matching what `generate` uses. attention_mask: [B, T] -> [B, T]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ActorCritic(nn.Module):
    """Policy + critic on one peft model. `forward` returns what a PPO micro-batch needs, with gradients."""

    def __init__(self, lm: Any, value_head: nn.Linear) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        super().__init__()
        self.lm = lm  # peft PeftModel with adapters "policy" and "value"
        self.value_head = value_head
        self._tuner_layers = [m for m in lm.modules() if isinstance(m, BaseTunerLayer)]
        # build_actor_critic's attention choice (training/block_attention.py)
        self.attention: dict[str, Any] | None = None
        self.lm.set_requires_grad(list(ADAPTERS), True)

    # --- plumbing ---
    def use_adapter(self, name: str) -> None:
        """Route every LoRA layer through adapter `name`, leaving requires_grad alone (see module docstring)."""
        for layer in self._tuner_layers:
            layer._active_adapter = [name]
        self.lm.base_model.active_adapter = name

    def _causal_lm(self) -> Any:
        return self.lm.get_base_model()

    def _hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last hidden state (after the final norm) of the backbone, skipping the LM head. -> [B, T, H]."""
        causal_lm = self._causal_lm()
        backbone = getattr(causal_lm, causal_lm.base_model_prefix)
        out = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state

    def _response_logits(self, hidden: Tensor, response_len: int) -> Tensor:
        """Logits that predict the R response tokens: positions T-R-1 .. T-2. hidden: [B, T, H] -> [B, R, V]."""
        head = self._causal_lm().get_output_embeddings()
        return head(hidden[:, -response_len - 1 : -1])

    # --- the three views of the model ---
    def policy_logits(self, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
        """[B, T] ids/mask (prompt left-padded + response right-padded) -> policy logits [B, R, V]."""
        self.use_adapter(POLICY)
        return self._response_logits(self._hidden(input_ids, attention_mask), response_len)

    def values(self, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
        """Critic estimate of the return before each response token. -> [B, R] (fp32)."""
        self.use_adapter(VALUE)
        hidden = self._hidden(input_ids, attention_mask)[:, -response_len - 1 : -1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        self.use_adapter(POLICY)
        return values

    def ref_logits(self, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
        """Reference policy = the frozen base with every adapter disabled. -> [B, R, V]."""
        with self.lm.disable_adapter():
            return self._response_logits(self._hidden(input_ids, attention_mask), response_len)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> tuple[Tensor, Tensor]:
        """One PPO micro-batch: (policy logits [B, R, V], values [B, R]); both adapters stay trainable."""
        logits = self.policy_logits(input_ids, attention_mask, response_len)
        return logits, self.values(input_ids, attention_mask, response_len)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, generation_config: Any) -> Tensor:
        """Sample responses with the policy adapter. [B, Q] left-padded -> [B, Q + R]."""
        self.use_adapter(POLICY)
        return self.lm.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
        )

    def trainable_state(self) -> dict[str, Tensor]:
        """Every trainable tensor (both LoRA adapters + value head), for exact checkpoint/resume."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = [n for n in state if n not in params]
        if missing:
            raise KeyError(f"checkpoint has parameters this model lacks: {missing[:5]}")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def save_adapters(self, out_dir: Path, is_main_process: bool = True) -> None:
        """Write peft folders out_dir/policy and out_dir/value, plus out_dir/value_head.pt."""
        self.lm.save_pretrained(
            str(out_dir), selected_adapters=list(ADAPTERS), is_main_process=is_main_process
        )
        if is_main_process:
            torch.save(self.value_head.state_dict(), out_dir / "value_head.pt")


def build_actor_critic(cfg: PPOConfig, policy_dir: Path, device: torch.device) -> ActorCritic:
    """Base (frozen, bf16/fp32 or nf4) + LoRA "policy" + LoRA "value" + zero-initialised value head."""
    from peft import LoraConfig, get_peft_model

    from model_store.loading import load_causal_lm
    from training.block_attention import apply_to_model

    # 4-bit: the project loader places the nf4 model on CUDA device 0 (one GPU per process is not handled).
    target = "cuda" if cfg.load_in_4bit else str(device)
    dtype = cfg.compute_dtype(torch.device(target).type).torch_dtype()
    base = load_causal_lm(policy_dir, dtype=dtype, load_in_4bit=cfg.load_in_4bit, device=target)
    base.config.use_cache = True
    attention = apply_to_model(
        base, cfg.attention, device=torch.device(target).type, bf16=dtype == torch.bfloat16
    )
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    for p in base.parameters():
        p.requires_grad_(False)

    def lora() -> LoraConfig:
        return LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            task_type="CAUSAL_LM",
        )

    torch.manual_seed(cfg.seed)  # identical LoRA init on every process
    lm = get_peft_model(base, lora(), adapter_name=POLICY)
    lm.add_adapter(VALUE, lora())
    hidden = base.config.get_text_config().hidden_size
    value_head = nn.Linear(hidden, 1, bias=True, device=device, dtype=torch.float32)
    nn.init.zeros_(value_head.weight)
    nn.init.zeros_(value_head.bias)
    model = ActorCritic(lm, value_head)
    model.attention = attention.to_json()
    model.use_adapter(POLICY)
    # No dropout anywhere: PPO ratios must be exactly 1 at the start of each update. Dropout modules are
    # zeroed rather than relying on eval(), because HF gradient checkpointing only runs in train mode.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train(cfg.gradient_checkpointing)
    return model


def init_value_head_from_reward(model: ActorCritic, reward_model: Any) -> bool:
    """Copy the reward model's scalar score head into the value head when shapes match. Returns True if copied."""
    head = getattr(reward_model, "score", None) or getattr(reward_model, "classifier", None)
    weight = getattr(head, "weight", None)
    if weight is None or tuple(weight.shape) != tuple(model.value_head.weight.shape):
        return False
    with torch.no_grad():
        model.value_head.weight.copy_(weight.float())
        bias = getattr(head, "bias", None)
        model.value_head.bias.copy_(
            bias.float() if bias is not None else torch.zeros_like(model.value_head.bias)
        )
    return True
