"""`llm_meta.meta`, the algorithm core made public, on a plain transformers model with plain peft."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llm_meta import meta


@pytest.fixture()
def peft_model(tiny_bert_dir):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2),
                           LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], init_lora_weights=False))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = {**tokenizer(["play jazz", "rain tomorrow", "play a song", "is it sunny"], padding=True,
                         return_tensors="pt"), "labels": torch.tensor([0, 1, 0, 1])}
    return model, batch


def test_trainable_is_the_lora_and_the_head_and_the_loss_closure_is_the_models_own_loss(peft_model):
    model, batch = peft_model
    theta = meta.trainable(model)
    assert theta and all("lora_" in k or "classifier" in k for k in theta)
    loss = meta.model_loss(model, batch)
    assert torch.allclose(loss(theta), model(**batch).loss)
    assert torch.allclose(loss(theta, [0, 1]), model(**{k: v[:2] for k, v in batch.items()}).loss)


def test_fomaml_with_no_inner_step_is_the_plain_gradient_and_inner_steps_move_it(peft_model):
    model, batch = peft_model
    theta = meta.trainable(model)
    loss = meta.model_loss(model, batch)
    model(**batch).loss.backward()
    plain = {k: p.grad.clone() for k, p in theta.items()}
    grads, query_loss, _ = meta.maml_gradient(theta, {}, list(theta), loss, loss, [], meta.InnerConfig(steps=0))
    assert all(torch.allclose(grads[k], plain[k], atol=1e-6) for k in theta)
    batches = meta.inner_batches(4, 64, 3, seed=0)
    adapted, adapted_loss, _ = meta.maml_gradient(theta, {}, list(theta), loss, loss, batches,
                                                  meta.InnerConfig(steps=3, lr=0.05))
    assert adapted_loss < query_loss  # three Adam steps on the same examples lower their loss
    assert any(not torch.allclose(adapted[k], plain[k]) for k in theta)
    diff, fast = meta.reptile_gradient({k: v.detach() for k, v in theta.items()}, {}, list(theta), loss, batches,
                                       meta.InnerConfig(steps=3, lr=0.05))
    assert all(torch.allclose(diff[k], theta[k].detach() - fast[k].detach()) for k in theta)
