"""The algorithm core on a plain transformers model with plain peft: first-order MAML over LoRA.

    .venv/bin/python examples/meta_core.py [--model all-MiniLM-L6-v2]

The core needs only a dict of the tensors to meta-learn and a loss closure (`llm_meta.meta`), so
any model whose forward pass returns a loss works the same way. Episodes: 3-way 4-shot BANKING77.
"""

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llm_meta import EpisodeSampler, load_task, meta
from llm_meta.modeling.model_files import resolve_model_path  # a bundled name -> its folder; a folder or Hub id as is

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="all-MiniLM-L6-v2")
path = resolve_model_path(parser.parse_args().model)

tokenizer = AutoTokenizer.from_pretrained(path)
model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=3),
                       LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"]))
theta = meta.trainable(model)  # θ: the LoRA factors and the classifier head, by name
outer, inner = torch.optim.Adam(theta.values(), lr=1e-3), meta.InnerConfig(steps=5, lr=1e-3)
for episode in EpisodeSampler([load_task("banking77")], n_way=3, k_shot=4, q_query=4).episodes(10):
    support, query = (meta.model_loss(model, {**tokenizer(part.texts, padding=True, return_tensors="pt"),
                                              "labels": torch.tensor(part.labels)})
                      for part in (episode.support, episode.query))
    batches = meta.inner_batches(len(episode.support.texts), 64, inner.steps, seed=0)
    grads, query_loss, _ = meta.maml_gradient(theta, {}, list(theta), support, query, batches, inner)
    for name, p in theta.items():
        p.grad = grads[name]  # FOMAML: the query gradient at the adapted weights, applied to θ
    outer.step()
    print(f"query loss after 5 inner steps: {query_loss:.3f}")
model.save_pretrained("meta_lora")  # a plain PEFT adapter: PeftModel.from_pretrained(base, "meta_lora")
