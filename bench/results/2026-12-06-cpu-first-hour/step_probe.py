import sys, time, torch
torch.set_num_threads(1)
from bllama.model.config import bLlamaConfig
from bllama.train.module import bLlama
import torch.nn.functional as F
def probe(prec, **over):
    torch.manual_seed(0)
    cfg = bLlamaConfig.preset("tiny", vocab_size=1536, **over)
    m = bLlama(cfg); opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 1536, (cfg.batch_size, cfg.seq_len+1))
    ts=[]
    for i in range(4):
        t=time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec=="bf16"):
            logits = m(x[:, :-1]); loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward(); opt.step(); opt.zero_grad()
        ts.append(time.process_time()-t)
    return m.num_parameters(), sorted(ts[1:])[1], cfg.batch_size*cfg.seq_len
for over in [dict(), dict(hidden_size=320, num_heads=8, num_kv_heads=4, ffn_size=960)]:
    for prec in ["fp32", "bf16", "fp32", "bf16"]:
        n, t, tok = probe(prec, **over)
        print(over, prec, f"{n/1e6:.2f}M params, {t:.2f} s CPU/step, {tok/t:.0f} tok/s", flush=True)
