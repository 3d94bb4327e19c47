"""The benchmark's machinery, which `recipes/benchmark.py` runs top to bottom: its configuration and
methods (config.py), its starts, trained once and kept by key (starts.py), and its episodes and
per-query scores, cached by key (scores.py). The statistics and the report are `llm_meta.eval.report`."""

from llm_meta.bench.config import (METHODS, SELECT, Config, EpisodicConfig, FullwayConfig, NerProtocolConfig,
                                   method_spec, shared_inner, start_algorithms, start_family, train_config)
from llm_meta.bench.scores import (cached_episodes, candidate_ids, episodes_hash, episodic_episodes, family_pick,
                                   fullway_episodes, load_or_score, ner_episodes, protocol_key, read_scores,
                                   score_candidates, score_file, start_candidates)
from llm_meta.bench.starts import (KEPT, START_RECORD, code_fingerprint, has_tensors, keep_run, load_start,
                                   params_fingerprint, read_record, runtime, selection_of, start_dir,
                                   start_train_config, train_start, untrained_start)

__all__ = ["METHODS", "SELECT", "Config", "EpisodicConfig", "FullwayConfig", "NerProtocolConfig", "method_spec",
           "shared_inner", "start_algorithms", "start_family", "train_config", "cached_episodes", "candidate_ids",
           "episodes_hash", "episodic_episodes", "family_pick", "fullway_episodes", "load_or_score", "ner_episodes",
           "protocol_key", "read_scores", "score_candidates", "score_file", "start_candidates", "KEPT", "START_RECORD",
           "code_fingerprint", "has_tensors", "keep_run", "load_start", "params_fingerprint", "read_record", "runtime",
           "selection_of", "start_dir", "start_train_config", "train_start", "untrained_start"]
