// ch09_sparse_attention: placeholder, replaced below.
#include "09_sparse_attention/dsa_verify.hpp"
int main() {
  return 0;
}
