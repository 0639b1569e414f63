"""The Show-Attend-Tell decoder as tutorials write it: the yardstick for our training and generation throughput.

Written the common way (cf. the well-known "PyTorch tutorial to image captioning", sgrvinod's): captions sorted by
length, and at every time step the attention projection of all 49 regions is recomputed, one output matmul for the
still-running captions is written into a preallocated `(batch, steps, vocab)` tensor, and the loss is taken over
the packed positions; gradients are clipped by value; plain Adam. Generation is that tutorial's beam search: one
image at a time, its k beams a batch that shrinks as beams end.

`TutorialDecoder(vocab, hoist_region_projection=True)` with `tutorial_optimizer(decoder, fused=True)` is the "tuned
tutorial": the two changes any competent user makes (the region projection once per batch, not once per step; the
fused Adam kernel). Only used by the benchmarks; not part of the package.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class TutorialAttention(nn.Module):
    def __init__(self, encoder_dim, decoder_dim, attention_dim):
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, encoder_out, decoder_hidden, projected_regions=None):
        # (batch, regions, attention): the tutorial recomputes it at every step; the tuned one passes it in.
        att1 = self.encoder_att(encoder_out) if projected_regions is None else projected_regions
        att2 = self.decoder_att(decoder_hidden)
        att = self.full_att(torch.tanh(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = torch.softmax(att, dim=1)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class TutorialDecoder(nn.Module):
    def __init__(self, vocab_size, embed_dim=512, attention_dim=512, decoder_dim=512, encoder_dim=2048, dropout=0.5,
                 hoist_region_projection=False):
        super().__init__()
        self.vocab_size = vocab_size
        self.hoist_region_projection = hoist_region_projection
        self.attention = TutorialAttention(encoder_dim, decoder_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.fc = nn.Linear(decoder_dim, vocab_size)

    def forward(self, encoder_out, captions, lengths):
        """encoder_out (batch, regions, channels); captions (batch, steps) starting with the start token; lengths
        include start and end tokens. Returns predictions (batch, steps-1, vocab), targets, decode lengths, alphas."""
        lengths, order = lengths.sort(descending=True)
        encoder_out, captions = encoder_out[order], captions[order]
        embeddings = self.embedding(captions)
        mean = encoder_out.mean(dim=1)
        h, c = self.init_h(mean), self.init_c(mean)
        decode_lengths = (lengths - 1).tolist()
        batch = encoder_out.shape[0]
        predictions = torch.zeros(batch, max(decode_lengths), self.vocab_size, device=encoder_out.device)
        alphas = torch.zeros(batch, max(decode_lengths), encoder_out.shape[1], device=encoder_out.device)
        projected = self.attention.encoder_att(encoder_out) if self.hoist_region_projection else None
        for t in range(max(decode_lengths)):
            active = sum(length > t for length in decode_lengths)
            context, alpha = self.attention(encoder_out[:active], h[:active], None if projected is None else projected[:active])
            context = torch.sigmoid(self.f_beta(h[:active])) * context
            h, c = self.decode_step(torch.cat([embeddings[:active, t], context], dim=1), (h[:active], c[:active]))
            predictions[:active, t] = self.fc(self.dropout(h))
            alphas[:active, t] = alpha
        return predictions, captions[:, 1:], decode_lengths, alphas


def tutorial_loss(decoder, encoder_out, captions, lengths, alpha_c=1.0):
    predictions, targets, decode_lengths, alphas = decoder(encoder_out, captions, lengths)
    scores = pack_padded_sequence(predictions, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    return F.cross_entropy(scores, targets) + alpha_c * ((1.0 - alphas.sum(dim=1)) ** 2).mean()


def tutorial_optimizer(decoder, fused=False):
    """The tutorial's Adam (lr 4e-4); `fused=True` for the tuned tutorial."""
    return torch.optim.Adam(decoder.parameters(), lr=4e-4, fused=fused)


def tutorial_clip_gradient(optimizer, grad_clip=5.0):
    """The tutorial's clipping: every gradient clamped to [-grad_clip, grad_clip]."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is not None:
                param.grad.data.clamp_(-grad_clip, grad_clip)


def tutorial_from(model) -> TutorialDecoder:
    """A `TutorialDecoder` computing what `model` (a ShowAttendTellForConditionalGeneration) computes on standardised
    features: the same architecture, its weights copied by name (the tutorial's attention has a bias on its score,
    zero here)."""
    config = model.config
    decoder = TutorialDecoder(config.vocab_size, config.embedding_size, config.attention_size, config.hidden_size,
                              config.encoder_hidden_size, dropout=0.0, hoist_region_projection=True)
    pairs = {
        decoder.embedding: model.embed_tokens, decoder.init_h: model.init_hidden, decoder.init_c: model.init_cell,
        decoder.attention.encoder_att: model.attention.encoder_proj, decoder.attention.decoder_att: model.attention.decoder_proj,
        decoder.f_beta: model.context_gate, decoder.decode_step: model.lstm, decoder.fc: model.lm_head,
    }
    with torch.no_grad():
        for theirs, ours in pairs.items():
            theirs.load_state_dict(ours.state_dict())
        decoder.attention.full_att.weight.copy_(model.attention.score.weight)
        decoder.attention.full_att.bias.zero_()
    return decoder.eval()


@torch.inference_mode()
def tutorial_beam_search(decoder: TutorialDecoder, encoder_out, start: int, end: int, beam_size: int = 5, max_steps: int = 50):
    """The tutorial's beam search (its caption.py), one image at a time: the k beams are one batch; a beam that emits
    the end token is set aside with its summed log-probability and dropped from the batch, k shrinking with it; the
    search stops when no beam is left or after `max_steps`; the caption is the set-aside beam of highest score (or,
    when none ended, the best running one). `encoder_out` (regions, channels). Returns the token ids from the start
    token on, the end token included when the caption ended."""
    k = beam_size
    encoder_out = encoder_out.unsqueeze(0).expand(k, *encoder_out.shape)
    projected = decoder.attention.encoder_att(encoder_out)
    previous_words = torch.full((k,), start, dtype=torch.long, device=encoder_out.device)
    sequences = previous_words.unsqueeze(1)
    top_scores = torch.zeros(k, 1, device=encoder_out.device)
    complete, complete_scores = [], []
    mean = encoder_out.mean(dim=1)
    h, c = decoder.init_h(mean), decoder.init_c(mean)
    for step in range(1, max_steps + 1):
        embeddings = decoder.embedding(previous_words)
        context, _ = decoder.attention(encoder_out, h, projected)
        context = torch.sigmoid(decoder.f_beta(h)) * context
        h, c = decoder.decode_step(torch.cat([embeddings, context], dim=1), (h, c))
        scores = top_scores + torch.log_softmax(decoder.fc(h), dim=1)
        # At the first step every beam is the same: take the k best words of one of them.
        top_scores, top_words = (scores[0] if step == 1 else scores.view(-1)).topk(k)
        beam, word = top_words // decoder.vocab_size, top_words % decoder.vocab_size
        sequences = torch.cat([sequences[beam], word.unsqueeze(1)], dim=1)
        ended = word == end
        complete.extend(sequences[ended].tolist())
        complete_scores.extend(top_scores[ended].tolist())
        k -= int(ended.sum())
        if k == 0:
            break
        running = ~ended
        sequences, top_scores, previous_words = sequences[running], top_scores[running].unsqueeze(1), word[running]
        h, c = h[beam[running]], c[beam[running]]
        encoder_out, projected = encoder_out[beam[running]], projected[beam[running]]
    if not complete:
        return sequences[int(top_scores.argmax())].tolist()
    return complete[max(range(len(complete)), key=complete_scores.__getitem__)]
