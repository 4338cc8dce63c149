"""Seq2seq speed: training tokens/s and decoding sequences/s (greedy, beam 5), against plain PyTorch, same run.

longshort's side is the real one-``Trainer`` seq2seq step (teacher forcing, token cross-entropy, clipping, AdamW,
OneCycle) on ``Seq2Seq`` with its defaults (emb 64, hidden 128, Bahdanau attention with input feeding), and its
batched greedy decoder and beam search. The reference is what a user would write by hand in plain PyTorch: the
same architecture (``nn.LSTM`` bidirectional encoder over packed sequences, an ``nn.LSTMCell`` decoder with additive
attention and input feeding, a Python loop over target steps) with the same sizes, optimizer and batches, and a
hand-written batched greedy loop. There is no plain-PyTorch beam search to compare with, so beam 5 is reported
against both greedy decoders.

Data: the built-in ``reverse`` task (sources of 5-20 tokens, targets the same length + <eos>), batch 64. Rounds
alternate between the sides so drift in machine load hits both alike; medians are reported.

    python benchmarks/seq2seq.py [--steps 20] [--rounds 3] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from longshort.data.config import DataConfig
from longshort.data.pair_pipeline import EncodedPairs, PairBatch, encode_pairs, prepare_pairs
from longshort.data.pairs import BOS_ID, EOS_ID, PAD_ID
from longshort.nn.decoding import beam_search
from longshort.nn.seq2seq import Seq2Seq, Seq2SeqConfig
from longshort.training.seq2seq_task import Seq2SeqSection, seq2seq_trainer
from longshort.training.trainer import TrainConfig

BATCH = 64


class PlainSeq2Seq(nn.Module):
    """The hand-written reference: BiLSTM encoder, bridge, LSTMCell decoder, additive attention, input feeding."""

    def __init__(self, v_src: int, v_tgt: int, emb: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.src_emb = nn.Embedding(v_src, emb, padding_idx=PAD_ID)
        self.tgt_emb = nn.Embedding(v_tgt, emb, padding_idx=PAD_ID)
        self.encoder = nn.LSTM(emb, hidden // 2, batch_first=True, bidirectional=True)
        self.bridge_h, self.bridge_c = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.cell = nn.LSTMCell(emb + hidden, hidden)
        self.w_q, self.w_k = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.w_c = nn.Linear(2 * hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, v_tgt)
        self.drop = nn.Dropout(0.1)

    def encode(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
        packed = pack_padded_sequence(self.drop(self.src_emb(src)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        enc, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        mask = torch.arange(src.shape[1])[None] < lengths[:, None]
        h0 = torch.tanh(self.bridge_h(torch.cat([h[-2], h[-1]], -1)))
        c0 = torch.tanh(self.bridge_c(torch.cat([c[-2], c[-1]], -1)))
        return enc, self.w_k(enc), mask, (h0, c0)

    def step(self, tok: Tensor, state: tuple[Tensor, Tensor], h_tilde: Tensor, enc: Tensor, keys: Tensor,
             mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        h, c = self.cell(torch.cat([self.drop(self.tgt_emb(tok)), h_tilde], -1), state)
        e = self.v(torch.tanh(self.w_q(h)[:, None] + keys)).squeeze(-1).masked_fill(~mask, float("-inf"))
        ctx = (torch.softmax(e, -1)[..., None] * enc).sum(1)
        h_tilde = torch.tanh(self.w_c(torch.cat([h, ctx], -1)))
        return self.out(self.drop(h_tilde)), (h, c), h_tilde

    def forward(self, src: Tensor, lengths: Tensor, tgt_in: Tensor) -> Tensor:
        enc, keys, mask, state = self.encode(src, lengths)
        h_tilde = enc.new_zeros(src.shape[0], enc.shape[-1])
        logits = []
        for t in range(tgt_in.shape[1]):
            lg, state, h_tilde = self.step(tgt_in[:, t], state, h_tilde, enc, keys, mask)
            logits.append(lg)
        return torch.stack(logits, 1)

    @torch.no_grad()
    def greedy(self, src: Tensor, lengths: Tensor, max_len: int) -> Tensor:
        enc, keys, mask, state = self.encode(src, lengths)
        b = src.shape[0]
        h_tilde = enc.new_zeros(b, enc.shape[-1])
        tok = torch.full((b,), BOS_ID, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        out = []
        for _ in range(max_len):
            lg, state, h_tilde = self.step(tok, state, h_tilde, enc, keys, mask)
            tok = lg.argmax(-1)
            out.append(tok)
            done |= tok == EOS_ID
            if bool(done.all()):
                break
        return torch.stack(out, 1)


def batches(data: EncodedPairs, steps: int) -> list[PairBatch]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    return [data.take(order[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]


def plain_train(model: PlainSeq2Seq, bs: list[PairBatch]) -> tuple[float, int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=len(bs))
    model.train()
    tokens = 0
    t0 = time.perf_counter()
    for b in bs:
        assert b.tgt is not None
        opt.zero_grad(set_to_none=True)
        logits = model(b.src[0], b.src_lengths[0], b.decoder_input())
        loss = F.cross_entropy(logits.flatten(0, 1), b.tgt.flatten(), ignore_index=PAD_ID)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss.item()
        tokens += int((b.tgt != PAD_ID).sum())
    return time.perf_counter() - t0, tokens


def ours_train(model: Seq2Seq, data: EncodedPairs, bs: list[PairBatch], tmp: Path) -> tuple[float, int]:
    cfg = TrainConfig(epochs=1, batch_size=BATCH, progress="off", tensorboard=False, precision="fp32",
                      optim={"grad_clip": 1.0})  # type: ignore[arg-type]  # fp32: as the plain loop computes
    tr = seq2seq_trainer(cfg, Seq2SeqSection(), model, data, None, seed=0, run_dir=tmp)
    tr.model.train()
    tokens = 0
    t0 = time.perf_counter()
    for i, b in enumerate(bs):
        tr.batch = i
        r = tr.train_step(b)
        r["batch_loss"].item()
        tokens += r["tokens"]
    return time.perf_counter() - t0, tokens


def timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--decode-batches", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/seq2seq.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = BATCH * max(args.steps, args.decode_batches) + 200
    s = prepare_pairs(DataConfig(source="builtin:reverse", builtin={"n": n}, split={"val": 0.0, "test": 0.0}), 0)
    data = encode_pairs(s.train, s.src_vocabs, s.tgt_vocab)
    bs = batches(data, args.steps)
    dec = batches(data, args.decode_batches)
    max_len = 50  # = 2 * 20 + 10, what seq2seq.decode gives for the longest source
    rows: dict[str, list[float]] = {k: [] for k in ("plain_train", "ours_train", "plain_greedy", "ours_greedy",
                                                     "ours_beam5")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            torch.manual_seed(r)
            plain = PlainSeq2Seq(len(s.src_vocabs[0]), len(s.tgt_vocab))
            torch.manual_seed(r)
            ours = Seq2Seq(s.src_vocabs, s.tgt_vocab, Seq2SeqConfig())
            sec, tok = plain_train(plain, bs)
            rows["plain_train"].append(tok / sec)
            sec, tok = ours_train(ours, data, bs, Path(tmp) / f"r{r}")
            rows["ours_train"].append(tok / sec)
            plain.eval()
            ours.eval()
            seqs = sum(len(b) for b in dec)
            rows["plain_greedy"].append(seqs / timed(
                lambda m=plain: [m.greedy(b.src[0], b.src_lengths[0], max_len) for b in dec]))
            rows["ours_greedy"].append(seqs / timed(
                lambda m=ours: [m.greedy_decode(b.src, b.src_lengths, max_len) for b in dec]))
            rows["ours_beam5"].append(seqs / timed(
                lambda m=ours: [beam_search(m, b.src, b.src_lengths, 5, max_len) for b in dec]))
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items()),
                  flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "what": "seq2seq training tokens/s and decoding sequences/s; builtin reverse, batch 64, emb 64, hidden 128, "
                "bahdanau + input feeding; untrained weights (decoding runs to max_len 50)",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "steps": args.steps, "rounds": args.rounds,
        "train_tokens_per_s": {"longshort": med["ours_train"], "plain_pytorch": med["plain_train"],
                               "ratio_longshort_over_plain": med["ours_train"] / med["plain_train"]},
        "decode_sequences_per_s": {
            "greedy_longshort": med["ours_greedy"], "greedy_plain_pytorch": med["plain_greedy"],
            "beam5_longshort": med["ours_beam5"],
            "ratio_greedy_longshort_over_plain": med["ours_greedy"] / med["plain_greedy"],
            "ratio_beam5_over_greedy": med["ours_beam5"] / med["ours_greedy"],
        },
        "rounds_raw": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    t, d = result["train_tokens_per_s"], result["decode_sequences_per_s"]
    print(f"training: longshort {t['longshort']:.0f} tokens/s, plain PyTorch {t['plain_pytorch']:.0f} tokens/s "
          f"(ratio {t['ratio_longshort_over_plain']:.2f})")
    print(f"greedy decoding: longshort {d['greedy_longshort']:.0f} seq/s, plain {d['greedy_plain_pytorch']:.0f} seq/s "
          f"(ratio {d['ratio_greedy_longshort_over_plain']:.2f}); beam 5: {d['beam5_longshort']:.0f} seq/s "
          f"({d['ratio_beam5_over_greedy']:.2f} x greedy)")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
