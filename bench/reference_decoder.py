"""The Show-Attend-Tell decoder as tutorials write it: the yardstick for our training throughput.

Written the common way (cf. the well-known "PyTorch tutorial to image captioning"): captions sorted by length,
and at every time step the attention projection of all 49 regions is recomputed, one output matmul for the
still-running captions is written into a preallocated `(batch, steps, vocab)` tensor, and the loss is taken
over the packed positions. Only used by the benchmarks; not part of the package.
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

    def forward(self, encoder_out, decoder_hidden):
        att1 = self.encoder_att(encoder_out)  # (batch, regions, attention): recomputed at every step
        att2 = self.decoder_att(decoder_hidden)
        att = self.full_att(torch.tanh(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = torch.softmax(att, dim=1)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class TutorialDecoder(nn.Module):
    def __init__(self, vocab_size, embed_dim=512, attention_dim=512, decoder_dim=512, encoder_dim=2048, dropout=0.5):
        super().__init__()
        self.vocab_size = vocab_size
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
        predictions = torch.zeros(batch, max(decode_lengths), self.vocab_size)
        alphas = torch.zeros(batch, max(decode_lengths), encoder_out.shape[1])
        for t in range(max(decode_lengths)):
            active = sum(length > t for length in decode_lengths)
            context, alpha = self.attention(encoder_out[:active], h[:active])
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
