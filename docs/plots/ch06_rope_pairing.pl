#!/usr/bin/env perl
# Draws docs/figures/ch06_rope_pairing.svg: perl docs/plots/ch06_rope_pairing.pl > docs/figures/ch06_rope_pairing.svg
# Which features RoPE rotates together: interleaved (DeepSeek) vs rotate-half (Llama).
use strict; use warnings;
my @o; my ($W,$H)=(900,480);
my $d = 8; my $bw = 70; my $x0 = 130;
my @c = ('#4c72b0','#dd8452','#55a868','#8172b3');
push @o, qq{<svg xmlns="http://www.w3.org/2000/svg" width="$W" height="$H" viewBox="0 0 $W $H" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">};
push @o, qq{  <title>RoPE pairings: DeepSeek rotates interleaved pairs (x0,x1), (x2,x3), ...; Llama-style code rotates x_i with x_(i+d/2)</title>};
push @o, qq{  <rect width="$W" height="$H" fill="white"/>};
push @o, qq{  <text x="20" y="26" font-size="16" font-weight="bold" fill="#222">Which two numbers RoPE turns together (a rope part of d = 8 numbers)</text>};
push @o, qq{  <text x="20" y="45" font-size="12" fill="#555">Pair i turns by the angle t·f_i at position t, with f_i = θ^(−2i/d); the colour is the pair, i.e. its frequency.</text>};
push @o, qq{  <text x="20" y="61" font-size="12" fill="#555">Both pairings use the same four frequencies; they differ in which two numbers are partners.</text>};
sub row { my ($y, $title, $sub, $partner) = @_;
  push @o, qq{  <text x="20" y="@{[$y-52]}" font-size="14" font-weight="bold" fill="#222">$title</text>};
  push @o, qq{  <text x="20" y="@{[$y-34]}" font-size="11.5" fill="#555">$sub</text>};
  for my $j (0..$d-1) {
    my $i = $partner->($j); my $x = $x0 + $j*$bw;
    push @o, qq{  <rect x="$x" y="$y" width="@{[$bw-10]}" height="34" rx="4" fill="$c[$i]" fill-opacity="0.22" stroke="$c[$i]" stroke-width="1.5"/>};
    push @o, qq{  <text x="@{[$x+($bw-10)/2]}" y="@{[$y+22]}" font-size="13" fill="#222" text-anchor="middle">x$j</text>};
  }
  my %seen;
  for my $j (0..$d-1) {
    my $i = $partner->($j); next if $seen{$i}++;
    my @js = grep { $partner->($_) == $i } 0..$d-1;
    my ($a,$b) = map { $x0 + $_*$bw + ($bw-10)/2 } @js;
    my $h = 18 + 9*abs($js[1]-$js[0]);
    push @o, qq{  <path d="M$a,@{[$y+36]} C$a,@{[$y+36+$h]} $b,@{[$y+36+$h]} $b,@{[$y+36]}" fill="none" stroke="$c[$i]" stroke-width="2"/>};
    push @o, qq{  <text x="@{[($a+$b)/2]}" y="@{[$y+36+$h*0.75+12]}" font-size="11" fill="$c[$i]" text-anchor="middle">f_$i</text>};
  }
  push @o, qq{  <text x="20" y="@{[$y+22]}" font-size="11" fill="#555">features</text>};
}
row(150, 'Interleaved: as DeepSeek\'s checkpoints and reference code expect it (this project)',
    'pairs (x_2i, x_2i+1) — read as complex numbers x_2i + i·x_2i+1 and multiplied by e^(i·t·f_i)', sub { int($_[0]/2) });
row(325, 'Rotate half: Llama-style code (and Hugging Face\'s DeepSeek code, after permuting the features)',
    'pairs (x_i, x_i+d/2) — the first half against the second half', sub { $_[0] % ($d/2) });
push @o, qq{  <text x="20" y="@{[$H-28]}" font-size="11.5" fill="#333">Both keep norms, and with both a score depends only on the distance t − s. But a checkpoint is trained with one of them:</text>};
push @o, qq{  <text x="20" y="@{[$H-11]}" font-size="11.5" fill="#333">on DeepSeek's weights only the interleaved pairing reproduces DeepSeek's numbers (chapter 6, further exercise 1).</text>};
push @o, '</svg>';
print join("\n", @o), "\n";
