#!/usr/bin/env perl
# Draws docs/figures/ch03_what_is_cached.svg: perl docs/plots/ch03_what_is_cached.pl > docs/figures/ch03_what_is_cached.svg
# (a schematic after Figure 3 of the DeepSeek-V2 paper; the numbers are Table 1's formulas at DeepSeek-V3's sizes).
use strict; use warnings;
my @o;
my ($W,$H)=(980,500);
push @o, qq{<svg xmlns="http://www.w3.org/2000/svg" width="$W" height="$H" viewBox="0 0 $W $H" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">};
push @o, qq{  <title>What each attention variant caches per token and layer: MHA, GQA, MQA, MLA (after Figure 3 of the DeepSeek-V2 paper, with the numbers of a DeepSeek-V3-shaped layer)</title>};
push @o, qq{  <defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f6c89f"/><line x1="0" y1="0" x2="0" y2="6" stroke="#dd8452" stroke-width="2.5"/></pattern></defs>};
push @o, qq{  <rect width="$W" height="$H" fill="white"/>};
push @o, qq{  <text x="20" y="26" font-size="16" font-weight="bold" fill="#222">What each variant caches, per token and layer</text>};
push @o, qq{  <text x="20" y="45" font-size="12" fill="#555">Drawn with 8 query heads; the numbers are for a DeepSeek-V3-shaped layer: 128 heads of d_h = 128, d_c = 512, d_h^R = 64, GQA with 8 groups.</text>};
my @panels = (
 ['Multi-Head (MHA)', 'mha', '2·n_h·d_h = 2·128·128', '32,768 numbers', '64 KiB in bf16', 32768, 'Strong'],
 ['Grouped-Query (GQA)', 'gqa', '2·n_g·d_h = 2·8·128', '2,048 numbers', '4 KiB in bf16', 2048, 'Moderate'],
 ['Multi-Query (MQA)', 'mqa', '2·d_h = 2·128', '256 numbers', '512 B in bf16', 256, 'Weak'],
 ['Multi-Head Latent (MLA)', 'mla', 'd_c + d_h^R = 512 + 64', '576 numbers', '1,152 B in bf16', 576, 'Stronger'],
);
my $pw = 235;
my ($yv,$yk,$yl,$yq) = (104,152,208,256);  # rows: values, keys, latent (MLA), queries
my $bh = 26;
for my $p (0..3) {
  my ($name,$kind,$formula,$num,$bytes,$n,$cap) = @{$panels[$p]};
  my $x0 = 20 + $p*$pw;
  push @o, qq{  <rect x="$x0" y="56" width="@{[$pw-12]}" height="420" rx="8" fill="#fafafa" stroke="#dddddd"/>};
  my $cx = $x0 + ($pw-12)/2;
  push @o, qq{  <text x="$cx" y="80" font-size="13" font-weight="bold" fill="#222" text-anchor="middle">$name</text>};
  my $hx = sub { my $i=shift; return $x0 + 14 + $i*26; };
  # which key/value head each query head reads
  my @g = $kind eq 'mha' ? (0..7) : $kind eq 'gqa' ? map { int($_/2) } (0..7) : (0) x 8;
  my @kvs = $kind eq 'mha' ? (0..7) : $kind eq 'gqa' ? (0..3) : $kind eq 'mqa' ? (0) : (0..7);
  my $kvx = sub { my $j=shift; return $kind eq 'gqa' ? $x0+14+$j*52+13 : $kind eq 'mqa' ? $x0+14+3.5*26 : $hx->($j); };
  my $cached = $kind ne 'mla';
  # lines query -> key
  for my $i (0..7) {
    my $qx = $hx->($i)+9; my $kx = $kvx->($g[$i]) + 9; $kx = $hx->($i)+9 if $kind eq 'mla';
    my $ytop = $yk+$bh;
    my $ybot = $yq;
    if ($kind eq 'mla') { push @o, qq{  <line x1="$qx" y1="$ybot" x2="$qx" y2="@{[$yl+22]}" stroke="#999" stroke-width="1"/>}; }
    else { push @o, qq{  <line x1="$qx" y1="$ybot" x2="$kx" y2="$ytop" stroke="#999" stroke-width="1"/>}; }
  }
  for my $j (@kvs) {
    my $x = $kvx->($j);
    my $fill = $cached ? 'url(#hatch)' : '#ffffff';
    my $stroke = $cached ? '#dd8452' : '#4c72b0';
    my $dash = $cached ? '' : ' stroke-dasharray="3,2"';
    push @o, qq{  <rect x="$x" y="$yv" width="18" height="$bh" rx="3" fill="$fill" stroke="$stroke"$dash/>};
    push @o, qq{  <rect x="$x" y="$yk" width="18" height="$bh" rx="3" fill="$fill" stroke="$stroke"$dash/>};
  }
  push @o, qq{  <text x="@{[$x0+4]}" y="@{[$yv-4]}" font-size="10" fill="#666">values</text>};
  push @o, qq{  <text x="@{[$x0+4]}" y="@{[$yk-4]}" font-size="10" fill="#666">keys</text>};
  if ($kind eq 'mla') {
    # latent and rope key
    my $lx = $x0+14; my $lw = 150;
    push @o, qq{  <rect x="$lx" y="$yl" width="$lw" height="22" rx="3" fill="url(#hatch)" stroke="#dd8452"/>};
    push @o, qq{  <text x="@{[$lx+$lw/2]}" y="@{[$yl+15]}" font-size="10.5" fill="#222" text-anchor="middle">latent c_KV (512)</text>};
    push @o, qq{  <rect x="@{[$lx+$lw+6]}" y="$yl" width="36" height="22" rx="3" fill="url(#hatch)" stroke="#dd8452"/>};
    push @o, qq{  <text x="@{[$lx+$lw+24]}" y="@{[$yl+15]}" font-size="10.5" fill="#222" text-anchor="middle">k^R</text>};
    push @o, qq{  <text x="@{[$lx+$lw+24]}" y="@{[$yl+34]}" font-size="9" fill="#666" text-anchor="middle">(64)</text>};
    # up-projection arrows
    push @o, qq{  <line x1="@{[$lx+$lw/2]}" y1="$yl" x2="@{[$lx+$lw/2]}" y2="@{[$yk+$bh+2]}" stroke="#4c72b0" stroke-width="1.5" marker-end="url(#arr)"/>};
    push @o, qq{  <text x="@{[$lx+$lw/2+4]}" y="@{[$yk+$bh+20]}" font-size="9.5" fill="#4c72b0">W_UK, W_UV (absorbed)</text>};
  }
  for my $i (0..7) {
    my $x = $hx->($i);
    push @o, qq{  <rect x="$x" y="$yq" width="18" height="$bh" rx="3" fill="#eaf1fb" stroke="#4c72b0"/>};
  }
  push @o, qq{  <text x="@{[$x0+4]}" y="@{[$yq+$bh+13]}" font-size="10" fill="#666">queries (8 heads drawn)</text>};
  # numbers
  my $ty = 324;
  push @o, qq{  <text x="@{[$x0+10]}" y="$ty" font-size="11" fill="#555">cached per token and layer:</text>};
  push @o, qq{  <text x="@{[$x0+10]}" y="@{[$ty+17]}" font-size="11" fill="#333">$formula</text>};
  push @o, qq{  <text x="@{[$x0+10]}" y="@{[$ty+36]}" font-size="14" font-weight="bold" fill="#222">$num</text>};
  push @o, qq{  <text x="@{[$x0+10]}" y="@{[$ty+53]}" font-size="11" fill="#333">$bytes</text>};
  # bar proportional to the numbers (MHA = full width)
  my $full = $pw - 40; my $bw = $full * $n / 32768; $bw = 1 if $bw < 1;
  push @o, qq{  <rect x="@{[$x0+10]}" y="@{[$ty+62]}" width="$full" height="10" fill="#eeeeee"/>};
  push @o, sprintf(qq{  <rect x="%d" y="%d" width="%.2f" height="10" fill="#dd8452"/>}, $x0+10, $ty+62, $bw);
  push @o, sprintf(qq{  <text x="%d" y="%d" font-size="9.5" fill="#666">%s of MHA</text>}, $x0+10, $ty+86, $n==32768 ? '100%' : sprintf('%.1f%%', 100*$n/32768));
  push @o, qq{  <text x="@{[$x0+10]}" y="@{[$ty+112]}" font-size="11" fill="#555">capability (paper, Table 1):</text>};
  my $cc = $cap eq 'Stronger' ? '#2e7d32' : $cap eq 'Weak' ? '#c44e52' : '#333';
  push @o, qq{  <text x="@{[$x0+10]}" y="@{[$ty+130]}" font-size="13" font-weight="bold" fill="$cc">$cap</text>};
}
# legend
my $ly = $H - 8;
push @o, qq{  <rect x="20" y="@{[$ly-11]}" width="16" height="12" fill="url(#hatch)" stroke="#dd8452"/>};
push @o, qq{  <text x="42" y="$ly" font-size="11" fill="#333">cached during inference</text>};
push @o, qq{  <rect x="210" y="@{[$ly-11]}" width="16" height="12" fill="#ffffff" stroke="#4c72b0" stroke-dasharray="3,2"/>};
push @o, qq{  <text x="232" y="$ly" font-size="11" fill="#333">never cached (rebuilt, or absorbed away: chapters 4–5)</text>};
push @o, qq{  <text x="600" y="$ly" font-size="11" fill="#333">bytes: numbers × 2 (bf16); × 61 layers for all of DeepSeek-V3</text>};
splice @o, 3, 0, qq{  <defs><marker id="arr" markerWidth="8" markerHeight="8" refX="4" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#4c72b0"/></marker></defs>};
push @o, '</svg>';
print join("\n", @o), "\n";
