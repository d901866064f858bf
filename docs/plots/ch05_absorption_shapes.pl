#!/usr/bin/env perl
# Draws docs/figures/ch05_absorption_shapes.svg: perl docs/plots/ch05_absorption_shapes.pl > docs/figures/ch05_absorption_shapes.svg
# One head's scores, rebuilt (chapter 4) and absorbed (chapter 5), drawn to scale.
use strict; use warnings;
my $s = 0.34;            # pixels per number
my ($dh, $dc) = (128, 512);
my $T = 150;             # pixels drawn for the T cached tokens (any T)
my $v = 12;              # thickness of a one-row vector
my @o;
my ($W,$H) = (1000, 780);
push @o, qq{<svg xmlns="http://www.w3.org/2000/svg" width="$W" height="$H" viewBox="0 0 $W $H" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">};
push @o, qq{  <title>Absorption as matrix shapes: one head's scores against T cached latents, rebuilding the keys (chapter 4) or moving W_UK onto the query (chapter 5)</title>};
push @o, qq{  <rect width="$W" height="$H" fill="white"/>};
push @o, qq{  <text x="20" y="26" font-size="16" font-weight="bold" fill="#222">Absorption, as shapes: one head's scores against T cached latents</text>};
push @o, qq{  <text x="20" y="45" font-size="12" fill="#555">DeepSeek-V2-Lite's sizes, drawn to scale: d_h = 128 (a head's key width), d_c = 512 (the latent).</text>};
push @o, qq{  <text x="20" y="61" font-size="12" fill="#555">The cache C (T × d_c) is the same in both rows; T, the number of cached tokens, is drawn at one length.</text>};
my %col = (q => ['#eaf1fb','#4c72b0'], w => ['#fdf0e3','#dd8452'], c => ['#e3f2e6','#55a868'], k => ['#f3e5f5','#8172b3'], s => ['#ffffff','#444444']);
sub box { my ($x,$y,$w,$h,$c,$lab,$dim,$o)=@_; my ($f,$st)=@{$col{$c}};
  push @$o, sprintf(qq{  <rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" stroke="%s" stroke-width="1.5"/>}, $x,$y,$w,$h,$f,$st);
  push @$o, sprintf(qq{  <text x="%.1f" y="%.1f" font-size="12" font-weight="bold" fill="#222" text-anchor="middle">%s</text>}, $x+$w/2, $y-18, $lab) if $lab ne '';
  push @$o, sprintf(qq{  <text x="%.1f" y="%.1f" font-size="10.5" fill="#555" text-anchor="middle">%s</text>}, $x+$w/2, $y-5, $dim) if $dim ne '';
}
sub op { my ($x,$y,$t,$o)=@_; push @$o, sprintf(qq{  <text x="%.1f" y="%.1f" font-size="18" fill="#444" text-anchor="middle">%s</text>}, $x, $y, $t); }
my $DH = $dh*$s; my $DC = $dc*$s;
# Row 1: rebuild (chapter 4)
my $y1 = 112;
push @o, qq{  <text x="20" y="@{[$y1-20]}" font-size="14" font-weight="bold" fill="#4c72b0">Chapter 4: rebuild every key, then score</text>};
my $x = 30;
box($x, $y1+20, $DC, $T, 'c', 'C', 'T × 512', \@o); $x += $DC + 12; op($x, $y1+20+$T/2, '·', \@o); $x += 12;
box($x, $y1+20, $DH, $DC, 'w', 'W_UKᵀ', '512 × 128', \@o); $x += $DH + 14; op($x, $y1+20+$T/2, '=', \@o); $x += 14;
box($x, $y1+20, $DH, $T, 'k', 'K', 'T × 128', \@o); $x += $DH + 40;
push @o, sprintf(qq{  <text x="%.1f" y="%.1f" font-size="12" fill="#333">then</text>}, $x-30, $y1+20+$T/2+4);
box($x, $y1+20, $DH, $v, 'q', 'q', '1 × 128', \@o); my $qx=$x; $x += $DH + 12; op($x, $y1+20+$v, '·', \@o); $x += 12;
box($x, $y1+20, $T, $DH, 'k', 'Kᵀ', '128 × T', \@o); $x += $T + 14; op($x, $y1+20+$v, '=', \@o); $x += 14;
box($x, $y1+20, $T, $v, 's', 'scores', '1 × T', \@o);
push @o, qq{  <text x="30" y="@{[$y1+20+$DC+18]}" font-size="12" fill="#333">every step, for every head: T·512·128 multiply-adds to rebuild K (and as many for V), then T·128 for the scores.</text>};
# Row 2: absorbed (chapter 5)
my $y2 = 392;
push @o, qq{  <text x="20" y="@{[$y2-20]}" font-size="14" font-weight="bold" fill="#55a868">Chapter 5: move W_UK onto the query, score against the latents themselves</text>};
$x = 30;
box($x, $y2+20, $DH, $v, 'q', 'q', '1 × 128', \@o); $x += $DH + 12; op($x, $y2+20+$v, '·', \@o); $x += 12;
box($x, $y2+20, $DC, $DH, 'w', 'W_UK', '128 × 512', \@o); $x += $DC + 14; op($x, $y2+20+$v, '=', \@o); $x += 14;
box($x, $y2+20, $DC, $v, 'q', 'q̃ = W_UKᵀ q', '1 × 512: the query is now d_c wide', \@o); $x += $DC + 30;
push @o, sprintf(qq{  <text x="%.1f" y="%.1f" font-size="12" fill="#333">then</text>}, $x-24, $y2+20+$v+2);
# second line of row 2
my $y3 = $y2 + 110;
$x = 30;
box($x, $y3, $DC, $v, 'q', 'q̃', '1 × 512', \@o); $x += $DC + 12; op($x, $y3+$v, '·', \@o); $x += 12;
box($x, $y3, $T, $DC, 'c', 'Cᵀ', '512 × T (the cache as it is)', \@o); $x += $T + 14; op($x, $y3+$v, '=', \@o); $x += 14;
box($x, $y3, $T, $v, 's', 'scores', '1 × T: the same numbers', \@o);
push @o, qq{  <text x="30" y="@{[$y3+$DC+26]}" font-size="12" fill="#333">once per step and head: 128·512 multiply-adds for q̃, then T·512 for the scores. No key is ever rebuilt; the values go the same way through W_UV.</text>};
push @o, qq{  <text x="30" y="@{[$y3+$DC+44]}" font-size="11" fill="#666">Why the scores are equal: q · Kᵀ = q · (C W_UKᵀ)ᵀ = (W_UKᵀ q)ᵀ · Cᵀ = q̃ · Cᵀ (matrix products are associative).</text>};
push @o, '</svg>';
print join("\n", @o), "\n";
